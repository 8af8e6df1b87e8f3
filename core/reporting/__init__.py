"""The evidence for people: words, plotly figures, the HTML report and the model card."""
