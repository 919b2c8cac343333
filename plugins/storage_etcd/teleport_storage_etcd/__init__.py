"""teleport-py cluster-state backend in etcd v3 (``teleport.storage.type: etcd``)."""
