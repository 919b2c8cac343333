"""teleport-py plugin: POST each access request change to a URL (a notification bridge's start)."""
