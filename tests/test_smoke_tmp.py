def test_plain(client):
    r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}])
    assert r.choices[0].message.content == "echo: hello there"

def test_stream(client):
    s = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
    assert text == "echo: hello there"
