from tests.test_kaggle import SPEC
def test_show(emulator, cli, tmp_path):
    emulator.faults.set(fail_notebook=True)
    for args in (("generate", *SPEC, "--out", str(tmp_path / "out")), ("resume",), ("resume",)):
        code, out, err = cli(*args, cwd=tmp_path)
        print(code, err)
    assert 0
