# rpi-config% so that it applies whether meta-raspberrypi names the recipe rpi-config.bb or
# rpi-config_git.bb (both names exist in its history).
# config.txt for the reference wiring (board/README.md): I2C1 on header pins 3/5 and hardware
# PWM0 on GPIO18, read by board/rpi4.toml and board/rpi5.toml. meta-raspberrypi turns
# ENABLE_I2C into dtparam=i2c_arm=on and appends RPI_EXTRA_CONFIG to config.txt.
ENABLE_I2C = "1"
RPI_EXTRA_CONFIG:append = "\n# ocf-agent: PWM0 on GPIO18\ndtoverlay=pwm,pin=18,func=2\n"
