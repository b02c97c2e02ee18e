"""The ``convlab`` command's entry point (the console script ``convlab.cli:main``): how a
command ends. User mistakes print one ``convlab: error: ...`` line and exit 2; Ctrl-C
(SIGTERM) prints ``convlab: interrupted`` (``terminated``), with what survived if
anything did, and exits 130 (143).

The commands are in :mod:`convlab.commands`, imported by :func:`main` inside the block
that handles Ctrl-C: with them come numpy, h5py, fire and tqdm (and, when the backends
are first listed, pyfftw), about 0.2 s of imports, and a Ctrl-C during those ends as one
at any later moment does, not in a traceback. So this module imports nothing but the
standard library's signal, sys and warnings, and the package's ``__init__`` imports
nothing at all (see ``convlab/__init__.py``).
"""

import signal
import sys
import warnings


def one_line_warning(message, category, filename, lineno, line=None):
    """A warning as the CLI prints it (see :func:`main`): what is wrong, not where in the code."""
    return f"convlab: warning: {message}\n"


def imported_commands():
    """:func:`convlab.commands.run` and :func:`convlab.checkpoints.raise_terminated`,
    imported (numpy, h5py, fire: see the module doc). A Ctrl-C during these
    imports raises KeyboardInterrupt, except where it lands inside a C extension's own
    imports, which some turn into an ImportError (numpy's "Importing the numpy
    C-extensions failed", h5py's "Failed to import 'zlib.decompress'"): then too it is a
    KeyboardInterrupt, known by the SIGINT seen meanwhile."""
    seen = []

    def ctrl_c(signum, frame):
        seen.append(signum)
        raise KeyboardInterrupt

    # First, as it is small (the standard library only): main needs it to explain a failure
    # under ulimit -v, where one of the big imports below may be what fails.
    from convlab.headroom import process_limits

    ours = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not an ignored SIGINT
    if ours:
        signal.signal(signal.SIGINT, ctrl_c)
    try:
        from convlab.checkpoints import raise_terminated
        from convlab.commands import run
    except ImportError as error:
        if seen:
            raise KeyboardInterrupt from None
        if process_limits():  # ulimit -v or -d too tight to map a library's code
            raise MemoryError(f"a library could not be loaded ({error})") from None
        raise
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    return run, raise_terminated


class StdoutClosed(BrokenPipeError):
    """Standard output's reader has gone (``convlab train | head -1`` after head exits)."""


class StdoutFailed(OSError):
    """Standard output refused a write otherwise (``> /dev/full``: no space left), said as
    ``convlab bench`` says a file it cannot write: "cannot write standard output: <why>"
    (a bare ``[Errno 28] No space left on device`` names nothing)."""

    def __str__(self):
        return f"cannot write standard output: {self.strerror or self.args[0]}"


class StandardOutput:
    """``sys.stdout`` while a command runs (:func:`main`): the same stream, whose failed writes
    and flushes raise :class:`StdoutClosed` (its reader gone; told from a socket's
    BrokenPipeError) or :class:`StdoutFailed` (told from a file's failed write)."""

    def __init__(self, stream):
        self._stream = stream

    def _failed(self, error):
        kind = StdoutClosed if isinstance(error, BrokenPipeError) else StdoutFailed
        return kind(error.errno, error.strerror or str(error))

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as e:
            raise self._failed(e) from None

    def flush(self):
        try:
            self._stream.flush()
        except OSError as e:
            raise self._failed(e) from None

    def __getattr__(self, name):  # fileno, isatty, encoding, buffer, ...
        return getattr(self._stream, name)


def quiet_stdout():
    """Flush standard output; if it cannot take what is left (its reader gone, a full disk),
    point its descriptor at /dev/null, so that Python's own flush as the process exits does not
    print "Exception ignored ... BrokenPipeError" after the line that says how it ended."""
    import os

    try:
        sys.stdout.flush()
    except (OSError, ValueError):  # ValueError: closed
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.__stdout__.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass


def end_as_closed_pipe():
    """End the process as SIGPIPE's default action would have ended it at the failed write,
    with status 128 + SIGPIPE (141) and nothing said, but only now: after the blocks that were
    running (the lock files of :func:`convlab.files.sole_writer`, temporary files) have been
    left. (A SIGPIPE left at its default, as up to 0.14.0, killed the process at once and
    left the output's lock file behind.)"""
    import os

    quiet_stdout()
    sys.stderr.flush()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    sys.exit(128 + signal.SIGPIPE)  # where the signal did not end it


def interrupted_note() -> str:
    """What the line of a SIGINT that no step of convlab explained adds: "" but under a
    process limit (ulimit -v or -d), where OpenBLAS may have sent it: its threads' start-up
    (``blas_thread_init``, run as numpy or SciPy loads it) raises SIGINT when it cannot start
    a thread, and a signal does not say who sent it, so the line names that possibility."""
    from convlab.headroom import limits_note

    note = limits_note()
    return (f"; if not by Ctrl-C, then by OpenBLAS, which raises SIGINT when it cannot start its threads{note}, "
            "or set OPENBLAS_NUM_THREADS=1") if note else ""


def main(argv=None):
    warnings.formatwarning = one_line_warning
    # A closed stdout (`convlab train | head -1`) ends the process quietly at its next print,
    # as command-line tools do, with status 141 as SIGPIPE's default action would, but after
    # the running blocks have cleaned up (end_as_closed_pipe): Python ignores SIGPIPE, so the
    # print raises, and the error unwinds through them. Every file is saved before the line
    # that reports it is printed, so nothing is lost.
    wrapped = argv is None and hasattr(signal, "SIGPIPE") and sys.stdout is not None
    if wrapped:
        sys.stdout = StandardOutput(sys.stdout)
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        run, raise_terminated = imported_commands()
        if argv is None:  # this process ends with a stop (see the KeyboardInterrupt below)
            import convlab.checkpoints

            convlab.checkpoints.STOP_ENDS_PROCESS = True
        if previous_sigterm is signal.SIG_DFL:  # SIGTERM is a stop like Ctrl-C, not a sudden death
            signal.signal(signal.SIGTERM, raise_terminated)
        run(sys.argv[1:] if argv is None else list(argv))
        if wrapped:
            sys.stdout.flush()  # what is still buffered, here, where its failure is said as any other
    except StdoutClosed:
        end_as_closed_pipe()
    # Our checks raise ValueError subclasses with user-facing messages; an OSError is the
    # system refusing a read or write our checks could not foresee (disk full, /proc, ...),
    # a MemoryError or a thread that cannot start one refusing memory or address space (under
    # ulimit -v: the limit, see convlab.headroom.out_of_room). Notes (a failed run's: what its
    # checkpoint holds) go on the same line.
    except (ValueError, OSError, MemoryError, RuntimeError) as e:
        from convlab.headroom import THREAD_NOT_STARTED, out_of_room  # already imported by the commands

        if isinstance(e, RuntimeError) and str(e) != THREAD_NOT_STARTED:
            raise
        message = str(e) if isinstance(e, (ValueError, OSError)) else out_of_room(e)
        quiet_stdout()
        print(f"convlab: error: {'; '.join([message, *getattr(e, '__notes__', ())])}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # a message, if any, says what survived and how to go on
        if argv is None:  # Ctrl-C pressed again as the process exits raised in its atexit callbacks
            for ignored in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(ignored) is not None:  # not set from outside Python
                    signal.signal(ignored, signal.SIG_IGN)
            previous_sigterm = signal.getsignal(signal.SIGTERM)  # what `finally` leaves: ignored, to the exit
        signum = getattr(e, "signum", signal.SIGINT)  # SIGTERM: see convlab.checkpoints.Terminated
        quiet_stdout()
        print(f"convlab: {'terminated' if signum == signal.SIGTERM else 'interrupted'}"
              + (f"; {e}" if e.args else interrupted_note() if signum == signal.SIGINT else ""), file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if wrapped:
            sys.stdout = sys.stdout._stream if isinstance(sys.stdout, StandardOutput) else sys.stdout


if __name__ == "__main__":
    main()
