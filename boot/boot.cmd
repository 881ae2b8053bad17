# Bramble boot script (compiled to boot.scr by the image builder).
#
# Runs under U-Boot's distro boot on a Raspberry Pi (rpi_arm64) and in QEMU
# (qemu_arm64) alike: it loads the active slot's kernel and initramfs from the
# FAT boot partition it was itself loaded from. The slot and the kernel command
# line live in one place, bramble.env on the same partition.

setenv bramble_slot A
setenv bramble_cmdline "console=ttyAMA0,115200"
if load ${devtype} ${devnum}:${distro_bootpart} ${scriptaddr} bramble.env; then
    env import -t ${scriptaddr} ${filesize}
fi
echo "Bramble: booting slot ${bramble_slot}"

# Older Debian arm64 kernels are gzip-compressed; booti unpacks those through
# this area (an uncompressed Image boots in place).
if test -z "${kernel_comp_addr_r}"; then
    setexpr kernel_comp_addr_r ${kernel_addr_r} + 0x4000000
fi
setenv kernel_comp_size 0x4000000

load ${devtype} ${devnum}:${distro_bootpart} ${kernel_addr_r} ${bramble_slot}/vmlinuz || exit
load ${devtype} ${devnum}:${distro_bootpart} ${ramdisk_addr_r} ${bramble_slot}/initrd || exit
setenv bramble_initrd_size ${filesize}

# On a Pi the firmware hands over its device tree at ${fdt_addr}; in QEMU the
# device tree U-Boot itself runs with is the machine's.
if test -n "${fdt_addr}"; then
    setenv bramble_fdt ${fdt_addr}
else
    setenv bramble_fdt ${fdtcontroladdr}
fi

# The command line names every console (HDMI tty1, the Pi's GPIO UART ttyS1,
# QEMU virt's PL011 ttyAMA0). The last one named becomes /dev/console, where
# PID 1 writes, and it must exist: on a Pi (U-Boot's rpi board) that is the
# GPIO header's UART, named once more at the end; elsewhere ttyAMA0 stays.
setenv bramble_console ""
if test "${board}" = "rpi"; then
    setenv bramble_console "console=ttyS1,115200"
fi

# A machine configuration put on this partition (`nodectl image flash --config`)
# is moved into the node's state by PID 1. Saying here whether there is one
# spares PID 1 loading the FAT driver and mounting this partition at every boot.
setenv bramble_boot_config ""
if test -e ${devtype} ${devnum}:${distro_bootpart} machine-config.yaml; then
    setenv bramble_boot_config "bramble.boot_config=1"
fi

setenv bootargs "${bramble_cmdline} ${bramble_console} bramble.slot=${bramble_slot} ${bramble_boot_config}"
booti ${kernel_addr_r} ${ramdisk_addr_r}:${bramble_initrd_size} ${bramble_fdt}
echo "Bramble: booting slot ${bramble_slot} failed"
