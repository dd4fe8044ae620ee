"""The operator console: server-rendered pages over the stored folders and analyses, mounted in
the web app at ``/console``. It keeps nothing of its own: each person signs in with
``Auth.Login`` and every call to the service carries that person's token."""
