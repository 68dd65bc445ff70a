import sys

if sys.argv[1:3] == ["study", "step"] or sys.argv[1:2] in (["pretrain"], ["sft"]):
    # A step runner, a trainer and SFT record stop requests from their first line: a job's USR1/TERM forwarded while
    # one still imports would otherwise kill it (exit 138) and its job would end without requeueing. (What
    # arrives before this line, during the interpreter's own start-up, a step runner holds back: READY_ENV.)
    from midtrain import signals

    signals.install()

from midtrain.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
