def test_query_returns_rows(writer):
    response = writer.query("select id, status from orders order by id")
    assert response.status_code == 200, response.text
    assert [row["status"] for row in response.json()["rows"]] == ["shipped", "new"]
