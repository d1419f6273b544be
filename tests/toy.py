"""A toy entity for runtime tests: a named counter with a log of applied amounts."""
from actors.entity import Entity, Event, Outcome
from protocols.errors import ErrorCode, SyncopateError


class Counter(Entity):
    kind = "counter"
    snapshot_every = 5
    tick_ms = None

    def __init__(self, entity_id, env):
        super().__init__(entity_id, env)
        self.total = 0
        self.history: list[int] = []

    def handle(self, cmd):
        if cmd.op == "add":
            n = cmd.args.get("n")
            if not isinstance(n, int) or isinstance(n, bool):
                raise SyncopateError(ErrorCode.INVALID_FIELD, "n must be an integer")
            self.apply(n)
            return Outcome(reply={"total": self.total}, records=[n],
                           events=[Event("counter.changed", {"total": self.total})])
        if cmd.op in ("get", "subscribe"):
            return Outcome(reply={"total": self.total, "history": list(self.history)})
        if cmd.op == "boom":
            self.total += 1000       # a bug that changes state and then raises
            raise RuntimeError("boom")
        raise SyncopateError(ErrorCode.UNKNOWN_MESSAGE_TYPE, cmd.op)

    def apply(self, record):
        self.total += record
        self.history.append(record)

    def snapshot(self):
        return {"total": self.total, "history": self.history}

    def restore(self, data):
        self.total = data["total"]
        self.history = list(data["history"])


def kinds():
    return {Counter.kind: Counter}
