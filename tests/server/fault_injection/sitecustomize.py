"""Fault injection for tests/server/test_faults.py. A server started with this folder on
PYTHONPATH and SGLSERVE_FAULT_INJECTION=1 loads it in every process (the launcher and the
spawned scheduler and detokenizer), and requests whose rid starts with a marker fail:

  POISON-ADMIT  the scheduler raises while admitting the request
  POISON-SCHED  the scheduler raises while processing the request's new token
  POISON-DETOK  the detokenizer raises on a message that holds the request
  POISON-HTTP   the HTTP process raises while handling the request's output
  CRASH-SCHED   the scheduler's event loop raises (the process dies)
  CRASH-DETOK   the detokenizer's event loop raises (the process dies)

Start-up faults (environment variables):
  SGLSERVE_FAULT_SCHEDULER_INIT=1    the scheduler raises while it starts (=exit: it exits with code 3,
                                     sending nothing)
  SGLSERVE_FAULT_HTTP_PREP=1         the launcher's HTTP-side preparation raises
  SGLSERVE_FAULT_SLOW_HTTP_PREP=<s>  the launcher's HTTP-side preparation sleeps s seconds first
"""

import os


def _install() -> None:
    from sglserve.detokenizer import detokenizer_manager
    from sglserve.scheduler import schedule_batch, scheduler
    from sglserve.tokenizer import tokenizer_manager

    def marked(rids, marker):
        return any(str(r).startswith(marker) for r in rids)

    orig_check = schedule_batch.Req.check_finished

    def check_finished(self, *args, **kwargs):
        if self.rid.startswith("POISON-SCHED"):
            raise RuntimeError("injected scheduler fault")
        return orig_check(self, *args, **kwargs)

    schedule_batch.Req.check_finished = check_finished

    orig_admit = scheduler.Scheduler.handle_generate_request

    def handle_generate_request(self, recv):
        if recv.rid.startswith("POISON-ADMIT"):
            raise RuntimeError("injected admission fault")
        return orig_admit(self, recv)

    scheduler.Scheduler.handle_generate_request = handle_generate_request

    orig_next = scheduler.Scheduler.get_next_batch_to_run

    def get_next_batch_to_run(self):
        if marked([r.rid for r in self.planner.waiting], "CRASH-SCHED"):
            raise RuntimeError("injected scheduler crash")
        return orig_next(self)

    scheduler.Scheduler.get_next_batch_to_run = get_next_batch_to_run

    orig_handle = detokenizer_manager.DetokenizerManager._handle

    def _handle(self, recv):
        if marked(recv.rids, "POISON-DETOK"):
            raise RuntimeError("injected detokenizer fault")
        return orig_handle(self, recv)

    detokenizer_manager.DetokenizerManager._handle = _handle

    orig_loop = detokenizer_manager.event_loop

    def event_loop(manager, recv_sock, send_sock):
        inner = manager.handle_batch_token_id_out

        def handle(recv):
            if marked(recv.rids, "CRASH-DETOK"):
                raise RuntimeError("injected detokenizer crash")
            return inner(recv)

        manager.handle_batch_token_id_out = handle
        return orig_loop(manager, recv_sock, send_sock)

    detokenizer_manager.event_loop = event_loop

    orig_update = tokenizer_manager.TokenizerManager._update_state

    def _update_state(self, state, *args):
        if state.rid.startswith("POISON-HTTP"):
            raise RuntimeError("injected HTTP-process fault")
        return orig_update(self, state, *args)

    tokenizer_manager.TokenizerManager._update_state = _update_state
    _install_startup_faults(scheduler)


def _install_startup_faults(scheduler) -> None:
    import time

    from sglserve.entrypoints import http_prep

    mode = os.environ.get("SGLSERVE_FAULT_SCHEDULER_INIT")
    if mode in ("1", "exit"):
        def failing_init(self, *args, **kwargs):
            if mode == "exit":
                os._exit(3)
            raise RuntimeError("injected scheduler start-up fault")

        scheduler.Scheduler.__init__ = failing_init

    orig_run = http_prep.HttpSidePrep._run
    slow = float(os.environ.get("SGLSERVE_FAULT_SLOW_HTTP_PREP", "0"))
    fail = os.environ.get("SGLSERVE_FAULT_HTTP_PREP") == "1"

    def _run(self):
        time.sleep(slow)
        if fail:
            self.error = RuntimeError("injected HTTP-side start-up fault")
            self._done.set()
            return
        orig_run(self)

    http_prep.HttpSidePrep._run = _run


if os.environ.get("SGLSERVE_FAULT_INJECTION") == "1":
    _install()
