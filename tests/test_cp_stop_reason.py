"""The message a control plane ends with when one of its servers stops: the server's own error,
not the TaskGroup's "unhandled errors in a TaskGroup (1 sub-exception)"."""

from __future__ import annotations

from control_plane.cli import stop_reason


def test_the_errors_inside_the_group_are_what_is_said() -> None:
    dp = RuntimeError("the DP server stopped serving: its HTTP server (bootstrap, certificates) ended")
    nested = ExceptionGroup("unhandled errors in a TaskGroup", [ExceptionGroup("inner", [dp])])
    assert stop_reason(nested) == str(dp)
    two = ExceptionGroup("g", [dp, OSError(98, "Address in use"), dp])
    assert stop_reason(two) == f"{dp}; [Errno 98] Address in use"
    assert stop_reason(KeyError()) == "KeyError"
