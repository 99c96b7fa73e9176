"""What every celery-stack service shares. Nothing here imports a service."""
