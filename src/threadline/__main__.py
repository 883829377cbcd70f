from threadline.cli.main import app

app(prog_name="threadline")
