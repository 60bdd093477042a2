"""A Python client of rendezvous.v1.Sync, with stubs generated from proto/ by
grpcio-tools (see run.sh): two callers pair and swap payloads, a lone caller
with a deadline gets DEADLINE_EXCEEDED, a call cut off gets its answer by
retrying with its attempt key, a caller that gives up withdraws its wait so
that nobody is paired with it, and the server's health says SERVING.

    python client.py 127.0.0.1:50051

Exits non-zero, saying why, if anything is not as the proto documents it.
"""

import pathlib
import sys
import threading
import time
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).parent / "gen"))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from rendezvous.v1 import sync_pb2, sync_pb2_grpc  # noqa: E402


def pair(stub):
    """Two callers with one id: each gets the other's payload, and one is
    told it was first, the other second."""
    meeting = f"python-{uuid.uuid4()}"
    answers = {}

    def call(name, payload):
        request = sync_pb2.WaitForSecondPartyRequest(id=meeting, payload=payload)
        answers[name] = stub.WaitForSecondParty(request, timeout=10)

    waiter = threading.Thread(target=call, args=("a", b"from a"))
    waiter.start()
    call("b", b"from b")
    waiter.join()
    a, b = answers["a"], answers["b"]
    assert a.peer_payload == b"from b", a
    assert b.peer_payload == b"from a", b
    roles = {a.role, b.role}
    assert roles == {sync_pb2.ROLE_FIRST, sync_pb2.ROLE_SECOND}, roles
    print(f"paired: {sync_pb2.Role.Name(a.role)} and {sync_pb2.Role.Name(b.role)}")


def deadline(stub):
    """A caller alone, with a 300 ms deadline: DEADLINE_EXCEEDED (code 4)."""
    request = sync_pb2.WaitForSecondPartyRequest(id=f"python-alone-{uuid.uuid4()}")
    try:
        stub.WaitForSecondParty(request, timeout=0.3)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
        assert error.code().value[0] == 4, error.code()
        print(f"alone: {error.code().name}: {error.details()}")
        return
    raise AssertionError("a lone caller was answered OK")


def retried(stub):
    """A call cut off (cancelled here; a broken connection, in life) keeps
    its place for the server's --attempt-grace. Its retry, with the same
    request and so the same attempt_key, gets the answer decided meanwhile:
    make one key per wait, and send it on every try."""
    meeting = f"python-retried-{uuid.uuid4()}"
    request = sync_pb2.WaitForSecondPartyRequest(
        id=meeting, payload=b"from a", attempt_key=str(uuid.uuid4())
    )
    first = stub.WaitForSecondParty.future(request, timeout=30)
    time.sleep(0.2)
    first.cancel()
    partner = stub.WaitForSecondParty(
        sync_pb2.WaitForSecondPartyRequest(id=meeting, payload=b"from b"), timeout=10
    )
    again = stub.WaitForSecondParty(request, timeout=10)
    assert partner.peer_payload == b"from a", partner
    assert again.peer_payload == b"from b", again
    assert {again.role, partner.role} == {sync_pb2.ROLE_FIRST, sync_pb2.ROLE_SECOND}
    print(f"retried: {sync_pb2.Role.Name(again.role)}, with the partner's payload")


def gave_up(stub):
    """A caller that gives up (Ctrl-C, a cancelled job) withdraws its wait
    by its attempt_key: the place is taken out at once, through any replica,
    and nobody is paired with it. Only cancelling the call would leave the
    place held for the server's --attempt-grace, as a broken connection's
    is, and the next caller would be paired with a caller that has gone."""
    meeting = f"python-gave-up-{uuid.uuid4()}"
    key = str(uuid.uuid4())
    request = sync_pb2.WaitForSecondPartyRequest(
        id=meeting, payload=b"from a", attempt_key=key
    )
    waiting = stub.WaitForSecondParty.future(request, timeout=30)
    time.sleep(0.2)
    try:
        raise KeyboardInterrupt  # in life: Ctrl-C, or a SIGTERM handler
    except KeyboardInterrupt:
        waiting.cancel()
        answer = stub.Withdraw(
            sync_pb2.WithdrawRequest(id=meeting, attempt_key=key), timeout=2
        )
    # WITHDRAWN: its place was taken out. UNKNOWN: it had not reached the
    # server yet, and now never parks. TOO_LATE_MET would say it had paired.
    assert answer.withdrawal in (
        sync_pb2.WITHDRAWAL_WITHDRAWN,
        sync_pb2.WITHDRAWAL_UNKNOWN,
    ), answer
    try:
        stub.WaitForSecondParty(
            sync_pb2.WaitForSecondPartyRequest(id=meeting, payload=b"from b"),
            timeout=0.3,
        )
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
        name = sync_pb2.Withdrawal.Name(answer.withdrawal)
        print(f"gave up: {name}; the next caller waited alone")
        return
    raise AssertionError("the next caller was paired with one that gave up")


def health(channel):
    """Liveness ("") and readiness (rendezvous.v1.Sync), as probes ask."""
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "rendezvous.v1.Sync"):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, (service, answer)
    print("health: SERVING")


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    with grpc.insecure_channel(target) as channel:
        stub = sync_pb2_grpc.SyncStub(channel)
        pair(stub)
        deadline(stub)
        retried(stub)
        gave_up(stub)
        health(channel)
    print("python client: ok")


if __name__ == "__main__":
    main()
