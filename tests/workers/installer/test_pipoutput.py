"""pip's output read for a person: which line is the cause, and what the progress shows.
The outputs are pip 26's own (captured against a refused loopback port) unless said otherwise."""
from workers.installer.pipoutput import failure_cause, progress_message

# `pip install --index-url http://127.0.0.1:9/whl/cpu --retries 1 torch`, pip 26.3 / urllib3 2.
REFUSED = """Looking in indexes: http://127.0.0.1:9/whl/cpu
WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken by 'NewConnectionError("HTTPConnection(host='127.0.0.1', port=9): Failed to establish a new connection: [Errno 111] Connection refused")': /whl/cpu/torch/
ERROR: Could not find a version that satisfies the requirement torch (from versions: none)
ERROR: No matching distribution found for torch
""".splitlines()
# The same with a constraint on the command line: the resolver's explanation comes first.
CONFLICT = """ERROR: Cannot install torch because these package versions have conflicting dependencies.

The conflict is caused by:
    The user requested torch
    The user requested (constraint) torch<=2.14.1

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/
""".splitlines()
# The shapes older pips (urllib3 1) print: the object's repr instead of its host.
OLD_RETRY = ("WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after "
             "connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at "
             "0x7f3a2c1d0>: Failed to establish a new connection: [Errno 111] Connection refused')': /whl/cpu/torch/")
NO_NAME = ("WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after "
           "connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at "
           "0x7f3a2c1d0>: Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')': "
           "/whl/cu128/torch/")
CERTIFICATE = ("Could not fetch URL https://download.pytorch.org/whl/cu128/torch/: There was a problem confirming "
               "the ssl certificate: HTTPSConnectionPool(host='download.pytorch.org', port=443): Max retries exceeded "
               "with url: /whl/cu128/torch/ (Caused by SSLError(SSLCertVerificationError(1, '[SSL: "
               "CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in certificate chain "
               "(_ssl.c:1006)'))) - skipping")
TRACEBACK = """Traceback (most recent call last):
  File "<string>", line 1, in <module>
  File "/venv/lib/python3.11/site-packages/torchvision/__init__.py", line 10, in <module>
    from torchvision import _meta_registrations
ModuleNotFoundError: No module named 'torch._C'
""".splitlines()


def test_a_refused_connection_reads_as_could_not_reach_its_host():
    assert failure_cause(REFUSED) == "could not reach 127.0.0.1 (Connection refused), so no torch could be found"


def test_a_retry_line_without_a_host_names_the_index_the_command_used():
    cause = failure_cause([OLD_RETRY, "ERROR: No matching distribution found for torch"], "download.pytorch.org")
    assert cause == "could not reach download.pytorch.org (Connection refused), so no torch could be found"


def test_a_name_that_does_not_resolve_says_so():
    assert failure_cause([NO_NAME], "download.pytorch.org") == \
        "could not reach download.pytorch.org (Temporary failure in name resolution)"


def test_a_refused_certificate_says_so():
    assert failure_cause([CERTIFICATE]) == "could not reach download.pytorch.org (its TLS certificate was not accepted)"


def test_the_first_error_line_is_the_cause_not_the_last():
    assert failure_cause(CONFLICT) == \
        "ERROR: Cannot install torch because these package versions have conflicting dependencies."


def test_a_python_check_quotes_its_import_error():
    assert failure_cause(TRACEBACK) == "ModuleNotFoundError: No module named 'torch._C'"


def test_pips_own_crash_quotes_the_exception_not_the_banner():
    lines = ["ERROR: Exception:", "Traceback (most recent call last):", '  File "pip/_internal/cli/base_command.py"',
             "OSError: [Errno 28] No space left on device", "  (the rest of pip's report)"]
    assert failure_cause(lines) == "OSError: [Errno 28] No space left on device"


def test_without_a_telling_line_the_last_one_is_quoted():
    assert failure_cause(["Collecting torch", "Killed", ""]) == "Killed" and failure_cause([]) == "no output"


def test_a_retry_shows_as_a_sentence_never_as_pips_line():
    assert progress_message(REFUSED[1]) == "pip cannot reach 127.0.0.1 yet; retrying"
    assert progress_message(OLD_RETRY, "download.pytorch.org") == "pip cannot reach download.pytorch.org yet; retrying"


def test_download_and_install_lines_are_shortened_to_what_a_person_reads():
    wheel = "https://download.pytorch.org/whl/cu128/torch-2.9.1%2Bcu128-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert progress_message(f"  Downloading {wheel} (899.7 MB)") == "Downloading torch-2.9.1+cu128...whl (899.7 MB)"
    assert progress_message("  Downloading numpy-2.3.5-cp311-cp311-manylinux_2_27_x86_64.whl.metadata (62 kB)") == \
        "Downloading numpy-2.3.5...whl metadata (62 kB)"
    assert progress_message("Using cached einops-0.8.1-py3-none-any.whl (64 kB)") == \
        "Using cached einops-0.8.1-py3-none-any.whl (64 kB)"
    assert progress_message("Installing collected packages: sympy, torch, torchvision") == \
        "Installing collected packages (3 packages)"
    assert progress_message("Successfully installed torch-2.9.1+cpu") == "Successfully installed (1 package)"


def test_blank_lines_and_bar_remains_keep_the_previous_message():
    assert progress_message("   ") is None and progress_message("━━━━━━━━━━━━ 1.2/899.7 MB 10.0 MB/s") is None


def test_a_credential_in_a_line_is_not_shown():
    assert progress_message("Looking in indexes: https://alice:s3cret@mirror.example/simple") == \
        "Looking in indexes: https://***@mirror.example/simple"
