"""``teleport.yaml``: values, the typed section reader plugins use, the model and the loader."""
