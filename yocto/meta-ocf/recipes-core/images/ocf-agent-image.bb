SUMMARY = "A board running ocf-agent, ready for the phone Mediator on first boot"
DESCRIPTION = "A small systemd image: ocf-agent with the machine's board file, \
               i2c-tools, DHCP on Ethernet by systemd-networkd and the time by \
               systemd-timesyncd. Only the agent listens on the network; an SSH \
               server comes only with OCF_IMAGE_DEBUG = 1."
HOMEPAGE = "https://example.invalid/ocf-pi"
BUGTRACKER = "https://example.invalid/ocf-pi/issues"
SECTION = "images"
LICENSE = "MIT"

inherit core-image features_check

REQUIRED_DISTRO_FEATURES = "systemd"

# Not core-image's default package groups: what the board needs to boot and run the agent, and
# i2c-tools to look at the bus by hand.
IMAGE_INSTALL = "packagegroup-core-boot \
                 ocf-agent \
                 ocf-network-config \
                 i2c-tools \
                 ${CORE_IMAGE_EXTRA_INSTALL} \
                 "

# OCF_IMAGE_DEBUG = "1" (yocto/kas/debug.yml) adds an SSH server and a root login without a
# password, for development and for testimage, which reaches the target over SSH, and Python,
# in which the testimage case (lib/oeqa/runtime/cases/ocf_agent.py) sends its CoAP request.
OCF_IMAGE_DEBUG ??= "0"
OCF_IMAGE_DEBUG_FEATURES = "ssh-server-dropbear allow-empty-password allow-root-login empty-root-password"
IMAGE_FEATURES += "${@oe.utils.conditional('OCF_IMAGE_DEBUG', '1', d.getVar('OCF_IMAGE_DEBUG_FEATURES'), '', d)}"
IMAGE_INSTALL:append = "${@oe.utils.conditional('OCF_IMAGE_DEBUG', '1', ' python3-core', '', d)}"
