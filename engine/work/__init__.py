"""Runs on arq workers: a run's stages as jobs on two queues, `gpu` (train, evaluate) and `cpu` (deploy).

connection.py the queues' connection: jobs as JSON, never pickle (every pool and Worker uses JOB_CODEC)
jobs.py       the queue of each stage, its Job row, enqueuing once; submit_run, approve_and_enqueue
stages.py     the job functions: claim, heartbeat, run the engine's stage in a thread, queue the next
stopping.py   a training stopped by its worker's shutdown saves a checkpoint first
reconcile.py  the database decides what should run; lost work is queued again
worker.py     an arq Worker for one queue, reconciling beside its jobs
"""
