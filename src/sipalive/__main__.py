from sipalive.cli.main import run

run()
