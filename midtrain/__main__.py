import sys

if sys.argv[1:3] == ["study", "step"]:
    # A step runner records stop requests from its first line: a job's USR1/TERM forwarded while it still
    # imports would otherwise kill it (exit 138) and its job would end without requeueing (run_step reads them).
    from midtrain import signals

    signals.install()

from midtrain.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
