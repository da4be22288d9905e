"""Jobs: the queue (huey), the worker, and the child process that runs one training job."""
