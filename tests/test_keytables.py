"""gateway/keytables.py: a name first assigned after many instances exist costs each instance a
dict of its own, unless the class's shared key table was primed (or the name is a slot)."""
import tracemalloc

from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter

from gateway.keytables import lazy_defaults, prime


def late_assignment_bytes(cls, n=200) -> float:
    """Bytes allocated per instance by a first write's assignments (`buffer_size`, `output_size`;
    small ints: no int object is made) on instances created before any of them wrote, as in a
    burst of connections."""
    objs = [cls(None, None) for _ in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for o in objs:
            o.buffer_size = 0
            o.output_size = 0
        return (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()


def test_a_primed_class_takes_its_late_names_without_a_dict_per_instance():
    class Unprimed(StreamWriter):
        pass

    class Primed(StreamWriter):
        pass

    prime(lambda: Primed(None, None), AbstractStreamWriter, StreamWriter)
    assert late_assignment_bytes(Unprimed) > 100         # each instance built a dict
    assert late_assignment_bytes(Primed) < 8             # the shared table held the name


def test_lazy_defaults_lists_plain_class_level_defaults_with_the_subclass_winning():
    class Base:
        _a = 1
        _b = None
        shared = "x"
        _mutable = []                 # not a plain default: left out

        def method(self):
            pass

    class Sub(Base):
        _a = 2

    assert lazy_defaults(Base, Sub) == {"_a": 2, "_b": None, "shared": "x"}
