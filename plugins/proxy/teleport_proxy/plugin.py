"""Hook implementations of teleport-proxy (registered under the ``teleport`` entry-point group).

This module is imported whenever the plugin manager is built: keep its imports light.
"""
