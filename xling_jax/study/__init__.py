"""The paper reproduction: the study's record (`record`) and its results page (`page`).

May import: every other package (it sits on top, beside the notebook API).
"""
