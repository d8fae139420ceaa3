"""relay/outputs/window.py: the in-flight window, with plain values (no trio, no sockets)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.message import Batch
from relay.outputs import delivery
from relay.outputs.window import Flight, Window, WindowStatistics
from relay.stats import Counters


def batch(*seqs: int) -> Batch:
    return Batch([b"<13>1 - - - - - seq=%d" % s for s in seqs], received=0.0)


def seqs(batches: list[Batch]) -> list[int]:
    return [int(m.rsplit(b"=", 1)[1]) for b in batches for m in b.messages]


class Head:
    """A spool's head as a list: ``ack`` removes from the front, as Spool.ack does;
    with the output's counters, which the window adds to."""

    def __init__(self, batches: list[Batch]) -> None:
        self.queued = list(batches)
        self.acked: list[Batch] = []
        self.acks = 0  # calls to ack
        self.counters = Counters("output", "up", (*delivery.COUNTERS, "dropped_rejected"))

    def ack(self, count: int) -> None:
        assert 0 < count <= len(self.queued)
        self.acked += self.queued[:count]
        del self.queued[:count]
        self.acks += 1

    def take(self, window: Window[None], count: int = 1) -> list[Batch]:
        """What the delivery loop takes: ``count`` batches after the window."""
        skip = window.take()
        return self.queued[skip : skip + count]


def make(
    *batches: Batch, max_bytes: int | None = None, max_messages: int | None = None
) -> tuple[Head, Window[None]]:
    head = Head(list(batches))
    return head, Window(head, head.counters, max_bytes=max_bytes, max_messages=max_messages)


def counters(head: Head) -> dict[str, int]:
    """The counters that are not 0."""
    return {k: v for k, v in head.counters.snapshot().items() if v}


def write(head: Head, window: Window[None], count: int = 1, now: float = 0.0) -> Flight[None]:
    """Take ``count`` batches after the window and write them, each message
    awaiting its answer (RELP's way)."""
    taken = head.take(window, count)
    assert taken
    return window.written(taken, now, None, awaiting=sum(len(b) for b in taken))


def answer(flight: Flight[None], count: int | None = None) -> None:
    flight.awaiting -= flight.awaiting if count is None else count


# -- write, confirm -----------------------------------------------------------------


def test_a_flight_with_nothing_to_wait_for_is_acked_at_the_next_confirm() -> None:
    head, window = make(batch(0, 1), batch(2), batch(3))
    taken = head.take(window, 2)
    window.written(taken, 5.0, None)
    assert head.acked == []  # written is not acked: confirm() does that
    nbytes = taken[0].nbytes + taken[1].nbytes
    assert window.statistics() == WindowStatistics(2, 3, nbytes, 1, 5.0, 0)
    window.confirm()
    assert seqs(head.acked) == [0, 1, 2]
    assert head.acks == 1  # one ack of the spool for what became safe together
    assert seqs(head.queued) == [3]
    assert window.statistics() == WindowStatistics(0, 0, 0, 0, None, 0)
    assert counters(head) == {"delivered": 3, "bytes": nbytes}


def test_the_next_batches_are_taken_after_the_window() -> None:
    head, window = make(batch(0), batch(1), batch(2))
    assert seqs(head.take(window)) == [0]
    write(head, window)
    assert seqs(head.take(window)) == [1]
    write(head, window)
    assert window.take() == 2
    assert seqs(head.take(window, 5)) == [2]


def test_a_flight_is_acked_once_every_answer_came() -> None:
    head, window = make(batch(0, 1, 2))
    flight = write(head, window)
    assert flight.awaiting == 3
    for _ in range(3):
        window.confirm()
        assert head.acked == []
        answer(flight, 1)
    window.confirm()
    assert seqs(head.acked) == [0, 1, 2]
    assert counters(head)["delivered"] == 3


def test_partial_confirm_acks_in_order_up_to_the_first_unanswered() -> None:
    head, window = make(batch(0), batch(1), batch(2), batch(3))
    flights = [write(head, window) for _ in range(4)]
    answer(flights[0])
    answer(flights[2])  # answered, but behind one that is not
    window.confirm()
    assert seqs(head.acked) == [0]
    assert window.batches == 3
    answer(flights[1])
    window.confirm()
    assert seqs(head.acked) == [0, 1, 2]
    assert window.batches == 1
    assert counters(head)["delivered"] == 3


def test_refused_messages_count_as_dropped_when_their_flight_is_acked() -> None:
    head, window = make(batch(0, 1, 2))
    flight = write(head, window)
    answer(flight)
    flight.refused += 1
    window.confirm()
    assert counters(head) == {
        "delivered": 3,
        "bytes": head.acked[0].nbytes,
        "dropped_rejected": 1,
    }


# -- a break mid-window, and the resend -----------------------------------------------


def test_a_break_mid_window_sends_back_all_from_the_first_unanswered_and_resends_in_order() -> None:
    batches = [batch(0, 1), batch(2), batch(3, 4), batch(5)]
    head, window = make(*batches)
    wire: list[Batch] = []  # what the collector was sent, in order
    flights = []
    for _ in range(4):
        wire += head.take(window)
        flights.append(write(head, window))
    answer(flights[0])
    answer(flights[2])  # answered, but after one that was not: it goes back too
    assert window.lost() == 4  # seq 2, 3, 4, 5
    assert counters(head)["resent"] == 4
    assert window.moved()
    assert window.batches == 1  # the answered one stays, for confirm()
    window.confirm()
    assert seqs(head.acked) == [0, 1]
    # The resend starts at the head, in order, and nothing newer goes first.
    again = head.take(window, 10)
    assert seqs(again) == [2, 3, 4, 5]
    assert not window.moved()
    wire += again
    answer(window.written(again, 1.0, None, awaiting=4))
    window.confirm()
    assert head.acked == batches  # each once, in order
    assert seqs(wire) == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5]  # duplicates: the lost window
    assert counters(head)["delivered"] == 6


def test_batches_taken_before_a_loss_have_moved_and_are_taken_again() -> None:
    head, window = make(batch(0), batch(1), batch(2))
    write(head, window)
    in_hand = head.take(window)
    assert seqs(in_hand) == [1]
    window.lost()
    assert window.moved()  # writing batch 1 now would put it before batch 0
    assert seqs(head.take(window)) == [0]
    assert not window.moved()


def test_a_loss_with_nothing_unsafe_moves_nothing() -> None:
    head, window = make(batch(0), batch(1))
    answer(write(head, window))
    window.take()
    assert window.lost() == 0
    assert not window.moved()
    assert "resent" not in counters(head)
    assert window.statistics().losses == 0
    window.confirm()
    assert seqs(head.acked) == [0]


def test_a_loss_with_an_empty_window_moves_nothing() -> None:
    _, window = make(batch(0))
    window.take()
    assert window.lost() == 0
    assert not window.moved()


def test_every_loss_counts_what_it_sends_back() -> None:
    head, window = make(batch(0, 1), batch(2))
    write(head, window, 2)
    assert window.lost() == 3
    write(head, window, 2)
    assert window.lost() == 3
    assert counters(head)["resent"] == 6
    assert window.statistics().losses == 2
    assert head.acked == []


def test_batches_being_written_when_the_connection_broke_count_as_resent() -> None:
    head, window = make(batch(0, 1), batch(2))
    window.resent(head.take(window, 2))
    assert counters(head) == {"resent": 3}
    assert window.batches == 0
    assert not window.moved()  # nothing in flight went back


def test_a_stop_releases_without_acking_or_counting_anything() -> None:
    head, window = make(batch(0), batch(1))
    write(head, window, 2)
    window.release()
    assert window.statistics() == WindowStatistics(0, 0, 0, 0, None, 0)
    assert head.acked == []
    assert seqs(head.queued) == [0, 1]  # still queued, to be saved
    assert counters(head) == {}


# -- bounds, and acking what is not known safe ----------------------------------------


def test_past_max_messages_the_oldest_flights_are_acked() -> None:
    head, window = make(*[batch(2 * i, 2 * i + 1) for i in range(4)], max_messages=4)
    write(head, window)
    write(head, window)
    assert head.acked == []  # 4 messages: at the bound, not past it
    write(head, window)
    assert seqs(head.acked) == [0, 1]  # unanswered, but the window may not grow
    assert window.messages == 4


def test_past_max_bytes_the_oldest_flights_are_acked_but_never_the_newest() -> None:
    big = batch(*range(100))
    head, window = make(batch(1000), big, max_bytes=10)
    write(head, window)
    write(head, window)
    assert seqs(head.acked) == [1000]
    assert window.batches == 1  # alone over the bound: kept, to be written again if lost
    assert window.lost() == 100


def test_confirm_oldest_and_confirm_all_ack_whatever_they_await() -> None:
    head, window = make(batch(0), batch(1), batch(2), batch(3))
    for _ in range(4):
        write(head, window)
    window.confirm_oldest()
    assert seqs(head.acked) == [0]
    window.confirm_oldest(2)
    assert seqs(head.acked) == [0, 1, 2]
    window.confirm_oldest(0)
    assert head.acks == 2
    window.confirm_all()
    assert seqs(head.acked) == [0, 1, 2, 3]
    assert window.batches == 0
    assert counters(head)["delivered"] == 4


def test_flights_are_listed_oldest_first() -> None:
    head, window = make(batch(0), batch(1))
    first = write(head, window, now=1.0)
    second = write(head, window, now=2.0)
    assert list(window.flights()) == [first, second]
    assert window.statistics().oldest_at == 1.0


# -- any schedule: each batch acked once, in order; duplicates bounded ---------------------


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(1, 12), st.none() | st.integers(1, 8))
def test_any_schedule_acks_each_batch_once_in_order_with_bounded_duplicates(
    data: st.DataObject, nbatches: int, max_messages: int | None
) -> None:
    """Writes, answers (in any order), losses and confirms in any order; then
    the connection holds: every batch is acked exactly once and in order, what
    was written twice is exactly what was counted as resent, and no loss sends
    back more than the window may hold."""
    batches = [batch(*range(10 * i, 10 * i + 1 + i % 3)) for i in range(nbatches)]
    total = sum(len(b) for b in batches)
    head, window = make(*batches, max_messages=max_messages)
    # What one write may carry (up to 3 batches) can exceed the bound alone.
    limit = total if max_messages is None else max(max_messages, 3 * max(map(len, batches)))
    wire: list[Batch] = []

    def step(op: str, count: int = 0) -> None:
        if op == "write":
            taken = head.take(window, count or data.draw(st.integers(1, 3)))
            if taken:
                wire.extend(taken)
                window.written(taken, 0.0, None, awaiting=sum(len(b) for b in taken))
        elif op == "answer":
            waiting = [f for f in window.flights() if f.awaiting]
            if waiting:
                answer(data.draw(st.sampled_from(waiting)), 1)
        elif op == "lose":
            in_flight = window.messages
            resent = window.lost()
            assert resent <= in_flight <= limit
        else:
            window.confirm()

    for op in data.draw(st.lists(st.sampled_from(["write", "answer", "lose", "confirm"]))):
        step(op)
    while head.queued:  # the connection holds now: everything gets through
        step("write", len(head.queued))
        for flight in window.flights():
            answer(flight)
        step("confirm")
    assert head.acked == batches
    assert counters(head)["delivered"] == total
    assert len(seqs(wire)) == total + counters(head).get("resent", 0)
    assert sorted(set(seqs(wire))) == seqs(batches)
