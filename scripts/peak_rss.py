"""Peak resident memory on Linux, for the measurement scripts beside this file."""


def reset_peak_rss() -> None:
    """Restart the process's peak resident set (VmHWM) from the current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_and_peak() -> tuple[int, int]:
    """(current, peak) resident set in bytes."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
