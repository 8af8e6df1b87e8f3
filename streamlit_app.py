"""The dashboard: `streamlit run streamlit_app.py`.

Four pages (in pages/) over one sidebar that holds the data folder and the artifacts folder.
The dashboard never trains in its own process: the Tune page starts `python -m core resume NAME`
in the background and follows its progress.json.
"""

import streamlit as st

from pages import _shared as ui

ui.leave_pages_folder_mode()  # a pages/ folder would otherwise start Streamlit's old multipage mode
st.set_page_config(page_title="Chest X-ray classifiers", page_icon=":material/pulmonology:", layout="wide")

page = ui.navigation()
ui.sidebar()
page.run()
