from belusim.cli import app

app()
