"""What people read: the HTML report, plots and the small shared page layout."""
