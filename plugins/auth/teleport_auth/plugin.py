"""Hook implementations of teleport-auth (registered under the ``teleport`` entry-point group).

This module is imported whenever the plugin manager is built: keep its imports light.
"""
