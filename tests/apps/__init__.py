"""ASGI apps that gunicorn serves in system tests: the services with a probe route added."""
