"""Tools beside the library, which nothing in it imports: demo, export, push, plot, reproduce, bench."""
