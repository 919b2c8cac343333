"""teleport-storage-s3: session recordings in S3."""

__version__ = "0.1.0"
