SUMMARY = "Network settings of the ocf-agent image"
DESCRIPTION = "DHCP on every Ethernet interface through systemd-networkd, and \
               systemd-resolved without its LLMNR and mDNS responders, so that \
               only ocf-agent listens on the network."
HOMEPAGE = "https://example.invalid/ocf-pi"
BUGTRACKER = "https://example.invalid/ocf-pi/issues"
SECTION = "net"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://80-ocf-ethernet.network;beginline=1;endline=1;md5=b2dccaa94b3629a08bfb4f983cad6f89"

inherit allarch features_check

REQUIRED_DISTRO_FEATURES = "systemd"

SRC_URI = "file://80-ocf-ethernet.network \
           file://ocf-resolved.conf \
           "

S = "${UNPACKDIR}"

do_install() {
    install -d ${D}${nonarch_libdir}/systemd/network
    install -m 0644 ${S}/80-ocf-ethernet.network ${D}${nonarch_libdir}/systemd/network/
    install -d ${D}${nonarch_libdir}/systemd/resolved.conf.d
    install -m 0644 ${S}/ocf-resolved.conf ${D}${nonarch_libdir}/systemd/resolved.conf.d/
}

FILES:${PN} += "${nonarch_libdir}/systemd/network \
                ${nonarch_libdir}/systemd/resolved.conf.d \
                "

RDEPENDS:${PN} = "systemd"
