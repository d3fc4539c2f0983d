"""The dashboard page the API serves at /: static HTML, JavaScript and CSS."""
