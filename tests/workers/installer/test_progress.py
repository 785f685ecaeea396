"""StepReporter's byte counts: what was transferred makes the speed, what was skipped over does not."""
from tests.workers.installer.support import recording_reporter
from workers.installer.progress import FileBar


def test_bytes_skipped_over_move_the_bar_but_not_the_speed():
    reporter, seen = recording_reporter()
    reporter.update(bytes_done=0, bytes_total=10_000)
    reporter.skip_to(6_000, message="resumed")  # found on disk: one tick, nothing transferred
    reporter.update(bytes_done=6_100)
    assert (seen[-2]["bytes_done"], seen[-2]["progress"], seen[-2]["speed"], seen[-2]["message"]) == \
        (6_000, 60, 0, "resumed")
    assert (seen[-1]["speed"], seen[-1]["eta"]) == (50.0, 78.0)  # 100 bytes in two ticks; 3,900 left


def test_bytes_transferred_count_towards_the_speed():
    reporter, seen = recording_reporter()
    reporter.update(bytes_done=0, bytes_total=10_000)
    reporter.update(bytes_done=6_000)
    assert seen[-1]["speed"] == 6_000


def test_a_count_that_goes_back_for_a_refetch_keeps_a_true_speed():
    reporter, seen = recording_reporter()
    reporter.update(bytes_done=0, bytes_total=1_000)
    reporter.update(bytes_done=800)
    reporter.update(bytes_done=0)  # checksum mismatch: from zero again
    reporter.update(bytes_done=100)
    assert seen[-1]["bytes_done"] == 100 and seen[-1]["speed"] == 300.0  # 900 bytes in three ticks


def test_a_file_bar_puts_one_files_bytes_on_its_steps_bar():
    reporter, seen = recording_reporter()
    bar = FileBar(reporter, offset=5_000, total=20_000)
    bar.skip_to(1_000, bytes_total=4_000, message="resumed")
    bar.update(bytes_done=2_000, bytes_total=4_000)
    bar.update(message="retrying")
    assert [(s["bytes_done"], s["bytes_total"], s["message"]) for s in seen[1:]] == \
        [(6_000, 20_000, "resumed"), (7_000, 20_000, "resumed"), (7_000, 20_000, "retrying")]


def test_a_file_bar_without_a_step_total_uses_the_files_own():
    reporter, seen = recording_reporter()
    FileBar(reporter).update(bytes_done=10, bytes_total=40)
    assert (seen[-1]["bytes_done"], seen[-1]["bytes_total"], seen[-1]["progress"]) == (10, 40, 25)
