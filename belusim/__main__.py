from belusim.cli.main import app

app()
