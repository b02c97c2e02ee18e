"""``python -m convlab``: the ``convlab`` command, for where pip's scripts folder is not on
``PATH`` (a venv not activated, ``pip install --user``). The same entry point as the
console script (:func:`convlab.cli.main`)."""

from convlab.cli import main

if __name__ == "__main__":
    main()
