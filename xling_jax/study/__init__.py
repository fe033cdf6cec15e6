"""The paper reproduction: what it is checked against (`paper`), the stage table that runs and
reads the tools (`stages`), the record read from them (`record`), the verdicts beside the paper
(`verdicts`) and the results page (`page`).

May import: every other package (it sits on top, beside the notebook API).
"""
