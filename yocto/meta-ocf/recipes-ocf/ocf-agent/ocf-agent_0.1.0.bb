SUMMARY = "OCF device agent for Raspberry Pi-class boards"
DESCRIPTION = "ocf-agent exposes a board's I2C sensors, GPIO switches and \
               PWM outputs as OCF resources over CoAP, is onboarded by a phone \
               Mediator and registers with an OCF Cloud."
HOMEPAGE = "https://example.invalid/ocf-pi"
BUGTRACKER = "https://example.invalid/ocf-pi/issues"
SECTION = "net"
# The workspace's license line (Cargo.toml, [workspace.package]); cargo xtask test checks that
# this checksum still matches it.
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=20;endline=20;md5=2507bd5f0713f05419cd2f22fa06fe62"
CVE_PRODUCT = "ocf-agent"

inherit rust cargo cargo-update-recipe-crates pkgconfig features_check systemd useradd

REQUIRED_DISTRO_FEATURES = "systemd"

# Where the source comes from (yocto/README.md, "Where the source comes from"): a release sets
# OCF_PI_SRC_URI to the project's git repository at its release tag and SRCREV to the tag's
# commit; a developer builds the working tree this layer is part of with externalsrc
# (EXTERNALSRC:pn-ocf-agent = "${OCF_PI_SOURCE_DIR}", as the kas files do).
OCF_PI_SRC_URI ??= ""
OCF_PI_SOURCE_DIR = "${@os.path.normpath(os.path.join(d.getVar('FILE_DIRNAME'), '../../../..'))}"
SRC_URI = "${OCF_PI_SRC_URI}"

require ${BPN}-crates.inc

SRC_URI += "file://ocf-agent.service \
            file://reboot-if-asked \
            file://60-ocf-agent.rules \
            file://pwm-access \
            file://i2c-dev.conf \
            "

# Without either, say so before anything is fetched.
python ocf_agent_check_source() {
    if not d.getVar('OCF_PI_SRC_URI') and not d.getVar('EXTERNALSRC'):
        bb.fatal("no source for ocf-agent: set OCF_PI_SRC_URI and SRCREV (a release) or EXTERNALSRC (a working tree), see yocto/README.md")
}
ocf_agent_check_source[doc] = "Fails with a clear message when the recipe has no source"
do_fetch[prefuncs] += "ocf_agent_check_source"

# Only the agent: its manifest, not the workspace's, so the dev cloud, the Mediator and the test
# tools are not built. Cargo.lock is the workspace's (one level up).
CARGO_SRC_DIR = "agent"

# dtls: the coaps:// (DTLS) endpoint and OCF's Random PIN ownership transfer, linked against
# the image's OpenSSL (the crate's default feature; off builds with --no-default-features).
# rppal: Raspberry Pi hardware PWM through rppal, which board/rpi4.toml and board/rpi5.toml use
# ("pwm-rppal"); on for the Raspberry Pi machines (meta-raspberrypi puts "rpi" into
# MACHINEOVERRIDES). The cargo class passes PACKAGECONFIG_CONFARGS to `cargo build`.
PACKAGECONFIG ??= "dtls"
PACKAGECONFIG:rpi ??= "dtls rppal"
PACKAGECONFIG[dtls] = ",--no-default-features,openssl"
PACKAGECONFIG[rppal] = "--features rppal"

# The workspace's release profile strips the binary; leave that to the build system, which
# keeps the symbols in ${PN}-dbg (and rejects an already stripped file, insane.bbclass).
export CARGO_PROFILE_RELEASE_STRIP = "false"

# The board description for the machine, one of board/*.toml.
OCF_AGENT_BOARD ?= "sim"
OCF_AGENT_BOARD:raspberrypi4-64 = "rpi4"
OCF_AGENT_BOARD:raspberrypi5 = "rpi5"

PACKAGE_ARCH = "${MACHINE_ARCH}"

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system i2c; --system gpio"
USERADD_PARAM:${PN} = "--system --user-group --home-dir /nonexistent --no-create-home \
                       --shell ${base_sbindir}/nologin ocf-agent"

SYSTEMD_SERVICE:${PN} = "ocf-agent.service"

do_install:append() {
    install -d ${D}${sysconfdir}/ocf-agent
    install -m 0644 ${S}/board/${OCF_AGENT_BOARD}.toml ${D}${sysconfdir}/ocf-agent/board.toml

    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${UNPACKDIR}/ocf-agent.service ${D}${systemd_system_unitdir}/

    install -d ${D}${libexecdir}/ocf-agent
    install -m 0755 ${UNPACKDIR}/reboot-if-asked ${D}${libexecdir}/ocf-agent/
    install -m 0755 ${UNPACKDIR}/pwm-access ${D}${libexecdir}/ocf-agent/

    install -d ${D}${nonarch_base_libdir}/udev/rules.d
    install -m 0644 ${UNPACKDIR}/60-ocf-agent.rules ${D}${nonarch_base_libdir}/udev/rules.d/
}

# i2c-dev is a module in the Raspberry Pi kernels: load it at boot.
do_install:append:rpi() {
    install -d ${D}${nonarch_libdir}/modules-load.d
    install -m 0644 ${UNPACKDIR}/i2c-dev.conf ${D}${nonarch_libdir}/modules-load.d/ocf-agent-i2c-dev.conf
}

FILES:${PN} += "${nonarch_base_libdir}/udev/rules.d \
                ${nonarch_libdir}/modules-load.d \
                "
CONFFILES:${PN} = "${sysconfdir}/ocf-agent/board.toml"

RRECOMMENDS:${PN}:append:rpi = " kernel-module-i2c-dev"
