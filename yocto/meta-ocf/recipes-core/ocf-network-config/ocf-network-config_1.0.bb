SUMMARY = "Network settings of the ocf-agent image"
DESCRIPTION = "DHCP on every Ethernet interface through systemd-networkd, and \
systemd-resolved without its LLMNR and mDNS responders, so that only ocf-agent \
listens on the network."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit allarch features_check

REQUIRED_DISTRO_FEATURES = "systemd"

SRC_URI = " \
    file://80-ocf-ethernet.network \
    file://ocf-resolved.conf \
"

S = "${UNPACKDIR}"

do_install() {
    install -d ${D}${nonarch_libdir}/systemd/network
    install -m 0644 ${S}/80-ocf-ethernet.network ${D}${nonarch_libdir}/systemd/network/
    install -d ${D}${nonarch_libdir}/systemd/resolved.conf.d
    install -m 0644 ${S}/ocf-resolved.conf ${D}${nonarch_libdir}/systemd/resolved.conf.d/
}

FILES:${PN} = " \
    ${nonarch_libdir}/systemd/network \
    ${nonarch_libdir}/systemd/resolved.conf.d \
"

RDEPENDS:${PN} = "systemd"
