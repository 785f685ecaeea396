"""What Gemini's video model makes of a requested length, without its SDK: billing prices the
length Google bills (billing/pricing.py), and the client asks for the same one (gemini.py)."""
import math

VIDEO_SECONDS = (3, 10)  # Gemini Omni Flash: 3 to 10 s in 1 s steps


def video_duration(seconds) -> int:
    """The length Gemini makes for the request: whole seconds within what it accepts."""
    shortest, longest = VIDEO_SECONDS
    return min(longest, max(shortest, math.ceil(float(seconds or 0))))
