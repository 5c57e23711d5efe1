"""Killing a run at a chosen epoch, for the resume tests: a callback that raises after n epochs."""


class Interrupt(Exception):
    pass


def interrupt_after(n):
    calls = []

    def callback(record):
        calls.append(record)
        if len(calls) == n:
            raise Interrupt

    return callback
