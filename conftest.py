pytest_plugins = ["lamina.testing"]
