import os
os.environ.setdefault("LAMINA_VERIFY_RECORD_CACHE", "1")
pytest_plugins = ["lamina.testing"]
