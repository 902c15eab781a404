"""Reads a config drive the way cloud-init does, and prints what it understood as JSON.

Usage: cloud_init_datasource.py FORMAT CLOUD_DIR MAC
FORMAT is config-2 or nocloud; the drive's files are extracted into CLOUD_DIR/seed/config_drive
or CLOUD_DIR/seed/nocloud, the seed directories cloud-init's own datasources search before
they mount devices (this kernel cannot mount iso9660). MAC is the NIC the guest would have.
"""
import json
import os
import sys

from cloudinit import helpers
from cloudinit.sources import DataSourceConfigDrive, DataSourceNoCloud

kind, cloud_dir, mac = sys.argv[1:4]
paths = helpers.Paths({"cloud_dir": cloud_dir, "run_dir": os.path.join(cloud_dir, "run")})
datasource = {
    "config-2": DataSourceConfigDrive.DataSourceConfigDrive,
    "nocloud": DataSourceNoCloud.DataSourceNoCloud,
}[kind](sys_cfg={"datasource_list": []}, distro=None, paths=paths)
# In the guest the kernel names the NIC; the OpenStack network_data conversion looks it up.
datasource.known_macs = {mac: "eth0"}
if not datasource.get_data():
    sys.exit("cloud-init's %s datasource found no data in %s" % (kind, cloud_dir))
vendor = datasource.get_vendordata_raw()
json.dump(
    {
        "instance_id": datasource.get_instance_id(),
        "hostname": datasource.get_hostname().hostname,
        "user_data_hex": (datasource.get_userdata_raw() or b"").hex(),
        "metadata": datasource.metadata,
        "network_config": datasource.network_config,
        # NoCloud hands vendor-data over as bytes, the OpenStack reader as text.
        "vendor_data": vendor.decode() if isinstance(vendor, bytes) else vendor,
    },
    sys.stdout,
    default=str,
    sort_keys=True,
)
