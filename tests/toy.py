"""A toy entity for runtime tests: a named counter with a log of applied amounts."""
from actors.entity import SYSTEM, Command, Entity, Event, Outcome
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
            tell = cmd.args.get("tell", [])
            if not isinstance(tell, list) or not all(isinstance(t, str) for t in tell):
                raise SyncopateError(ErrorCode.INVALID_FIELD, "tell must be a list of counter ids")
            self.apply(n)
            reply = {"total": self.total}
            if isinstance(cmd.args.get("pad"), str):       # a large reply, for the op cache's byte bound
                reply["pad"] = cmd.args["pad"]
            # effects: the same amount added to other counters (a derived view)
            return Outcome(reply=reply, records=[n],
                           events=[Event("counter.changed", {"total": self.total})],
                           effects=[Command("counter", t, "add", {"n": n}, SYSTEM) for t in tell])
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
