"""teleport-storage-lmdb: a teleport-py cluster-state backend over LMDB."""
