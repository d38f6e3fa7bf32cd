# config.txt for the reference wiring (board/README.md): I2C1 on header pins 3/5 and hardware
# PWM0 on GPIO18, which board/rpi4.toml and board/rpi5.toml use. meta-raspberrypi writes
# dtparam=i2c_arm=on for ENABLE_I2C and appends RPI_EXTRA_CONFIG to config.txt.
# Only for builds that opt in with the "ocfpi" distro override (yocto/kas/base.yml): adding the
# layer alone changes no other recipe (Yocto Project Compatible, yocto-check-layer).
# rpi-config% matches the recipe whether it is named rpi-config.bb or rpi-config_git.bb.
ENABLE_I2C:ocfpi = "1"
RPI_EXTRA_CONFIG:append:ocfpi = " \n# ocf-agent: PWM0 on GPIO18\ndtoverlay=pwm,pin=18,func=2\n"
