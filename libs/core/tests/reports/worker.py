"""`python worker.py [celery worker options]`: the console script a new queue would declare."""

import sys

import reports_queue  # noqa: F401 - registers the queue before the worker reads the registry

from celery_stack_core.worker import worker_main

worker_main("reports", sys.argv[1:])
