"""The GB/T 2260 table (mappers.region) and the one address reader (mappers.address)."""

from __future__ import annotations

from importlib import resources

import pytest

from mappers.address import read_address
from mappers.region import division, full_name, is_current, province_division, table


def test_the_table_names_its_source_and_holds_the_region():
    first = resources.files("mappers").joinpath("data", "gb2260.csv").read_text("utf-8").splitlines()[0]
    assert first.startswith("#") and "cn/GB2260" in first and "modood" in first
    current = [d for d in table().divisions if d.current]
    for prefix, counties in (("31", 16), ("32", 95), ("33", 90), ("34", 104)):
        assert sum(d.code.startswith(prefix) and d.level == "county" for d in current) == counties, prefix
    # Every current division hangs from a current one; no placeholder (市辖区) is a division.
    assert all(table().division(d.parent).current for d in current if d.parent)
    assert not {"市辖区", "县"} & {d.name for d in table().divisions}


@pytest.mark.parametrize("code, name, current", [
    ("330421", "嘉善县", True), ("320106", "鼓楼区", True), ("331004", "路桥区", True),
    ("330211", "镇海区", True), ("330114", "钱塘区", True),           # new in 2021
    ("330103", "下城区", False), ("310108", "闸北区", False), ("341400", "巢湖市", False),
    ("320584", "吴江市", False),
])
def test_codes(code, name, current):
    assert (division(code).name, is_current(code)) == (name, current)


def test_unknown_codes_and_lookups():
    assert division("339999") is None and not is_current("339999") and division(None) is None
    assert province_division("330421").name == "浙江省"
    assert (full_name("330421"), full_name("310118"), full_name("339999")) == ("浙江省嘉兴市嘉善县", "上海市青浦区", None)
    assert table().division("341400").retired == 2011


@pytest.mark.parametrize("text, parts, line", [
    ("江苏省南京市鼓楼区中山路1号", ("江苏省", "南京市", "鼓楼区"), "中山路1号"),
    ("台州市路桥区路桥街道", ("浙江省", "台州市", "路桥区"), "路桥街道"),
    ("宁波市镇海区镇海大道", ("浙江省", "宁波市", "镇海区"), "镇海大道"),
    ("安徽省合肥市长江西路小区3栋402室", ("安徽省", "合肥市", None), "长江西路小区3栋402室"),
    ("上海市黄浦区南京东路1号", ("上海市", "上海市", "黄浦区"), "南京东路1号"),
    ("上海黄浦区南京东路1号", ("上海市", "上海市", "黄浦区"), "南京东路1号"),   # 上海 for 上海市
    ("浙江嘉兴嘉善县罗星街道", ("浙江省", "嘉兴市", "嘉善县"), "罗星街道"),
    ("中国 浙江省 杭州市 西湖区 文三路", ("浙江省", "杭州市", "西湖区"), "文三路"),
    ("浙江省嘉善县罗星街道", ("浙江省", "嘉兴市", "嘉善县"), "罗星街道"),       # city left out
    ("嘉善县罗星街道", ("浙江省", "嘉兴市", "嘉善县"), "罗星街道"),             # both left out
    ("上海市闸北区天目西路", ("上海市", "上海市", "闸北区"), "天目西路"),       # retired 2015
    ("江苏省苏州市吴江市松陵镇", ("江苏省", "苏州市", "吴江市"), "松陵镇"),     # retired 2012
    ("鼓楼区中山路1号", (None, None, None), "鼓楼区中山路1号"),   # Nanjing's or Xuzhou's: unknown
    ("南京西路小区", (None, None, None), "南京西路小区"),         # 南京 alone is no city
    ("浙江省杭州市", ("浙江省", "杭州市", None), None),
    ("", (None, None, None), None),
])
def test_read_address(text, parts, line):
    place = read_address(text)
    fields = place.fields()
    assert (fields.get("state"), fields.get("city"), fields.get("district")) == parts
    assert place.line == line
