"""The experiment layer: many runs of the same `tunesmith` commands, queued, run in parallel and resumed.

    tunesmith queue add recipes/quickstart.yaml train.lr=5e-4 --name lr5e-4   # a job: any tunesmith command
    tunesmith queue work --workers 2 --devices 0,1                            # runs the queue, one process per job
    tunesmith queue ls                                                         # states, progress, loss, ETA

Modules, one per part: store (the SQLite queue: jobs and their states), submit (`queue add`: a command checked
and turned into a job), worker (`queue work`: processes, devices, heartbeats, signals), notify (--on-done and
--webhook), progress (what `queue ls` shows of a running job), commands (the `queue` command group).
"""
