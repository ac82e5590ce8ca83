"""This process's memory as Linux reports it, for the CPU benchmarks that run each case in a fresh
process and charge it the memory it added."""
import os


def memory_kib(field: str) -> int:
    """A line of /proc/self/status in KiB: "VmRSS" (resident now), "VmHWM" (the peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def reset_peak() -> bool:
    """Reset VmHWM to the current resident size (writing 5 to clear_refs); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    """Resident size now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
